-- Forward every mammogram that did not come from mammoseg itself to the node.
function OnStoredInstance(instanceId, tags, metadata, origin)
  if origin['RemoteAet'] == 'MAMMOSEG' then
    return
  end
  if tags['Modality'] == 'MG' then
    SendToModality(instanceId, 'mammoseg')
  end
end
